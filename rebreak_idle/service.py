"""``makeService(settings)``: wires the rooms together (the only module that knows them all)."""

from __future__ import annotations

from twisted.application.service import IService, MultiService

from .config import Settings

__all__ = ["makeService"]


def makeService(settings: Settings) -> IService:
    top = MultiService()
    return top
