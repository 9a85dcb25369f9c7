"""Provider profiles the scripted IMAP server double can play (texts and sources:
docs/providers.md)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROFILES", "Profile"]


@dataclass(frozen=True)
class Profile:
    """How one provider greets, limits and ends connections (texts: docs/providers.md)."""

    name: str
    greeting: str
    capabilities: str
    max_connections: int | None = None  # logged-in connections per user
    cap_reply: str = "NO [LIMIT] Too many connections"
    cap_closes: bool = False  # the refusal also closes the connection
    session_ttl: float | None = None  # BYE this long after any login
    session_bye: str = "* BYE Session expired, please login again."
    token_ttl: float | None = None  # BYE this long after an XOAUTH2 login
    token_bye: str = "* BYE Session invalidated - AccessTokenExpired"
    throttle_reply: str = "NO [THROTTLED] Try again later"
    drop_after: float | None = None  # close silently this long after a login
    require_id: bool = False
    id_refusal: str = "NO SELECT Unsafe Login. Please contact kefu@188.com for help"
    #: what the greeting and a CAPABILITY before login tell, when it differs from
    #: ``capabilities`` (told after login): Cyrus adds IDLE only after login
    pre_login_capabilities: str | None = None
    #: SELECT tells no UIDNEXT (Courier: only STATUS does)
    select_uidnext: bool = True
    #: STATUS of a folder no client has opened yet answers a new UIDVALIDITY each time
    #: (Courier-IMAP 5.0.13: the folder's UIDVALIDITY is made when it is first opened)
    unstable_status_uidvalidity: bool = False


PROFILES = {p.name: p for p in (
    Profile("gmail", "Gimap ready for requests",
            "IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 "
            "SASL-IR AUTH=XOAUTH2 AUTH=PLAIN AUTH=PLAIN-CLIENTTOKEN AUTH=OAUTHBEARER",
            max_connections=15,
            cap_reply="NO [ALERT] Too many simultaneous connections. (Failure)",
            session_ttl=86400.0),
    Profile("m365", "The Microsoft Exchange IMAP4 service is ready.",
            "IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN "
            "IDLE NAMESPACE LITERAL+",
            max_connections=20,
            cap_reply="BAD User is authenticated but not connected.",
            token_ttl=3600.0,
            throttle_reply="NO Request is throttled. Suggested Backoff Time: 299999 "
                           "milliseconds"),
    Profile("yahoo", "IMAP4rev1 Hello", "IMAP4rev1 ID MOVE NAMESPACE XYMHIGHESTMODSEQ UIDPLUS "
            "LITERAL+ CHILDREN X-MSG-EXT UNSELECT OBJECTID IDLE AUTH=PLAIN AUTH=XOAUTH2 "
            "SASL-IR", max_connections=5,
            cap_reply="NO [LIMIT] Too many connections"),
    Profile("gmx", "IMAP server ready", "IMAP4rev1 CHILDREN ENABLE ID IDLE LITERAL+ "
            "NAMESPACE UIDPLUS UNSELECT AUTH=PLAIN SASL-IR", max_connections=4,
            cap_reply="NO [UNAVAILABLE] Too many connections", drop_after=6 * 3600.0),
    Profile("icloud", "iCloud IMAP4 service ready", "IMAP4rev1 ID IDLE UIDPLUS "
            "AUTH=PLAIN SASL-IR", drop_after=2 * 3600.0),
    Profile("dovecot", "Dovecot ready.", "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE "
            "LITERAL+ AUTH=PLAIN", max_connections=10,
            cap_reply="NO [UNAVAILABLE] Maximum number of connections from user+IP exceeded "
                      "(mail_max_userip_connections=10)", cap_closes=True),
    # Courier-IMAP 5.0.13 (Debian): no SPECIAL-USE, folders under INBOX. ("INBOX.Junk"),
    # UIDNEXT only through STATUS, a new UIDVALIDITY per STATUS of an unopened folder;
    # the capabilities of /etc/courier/imapd's IMAP_CAPABILITY (LOGIN, no AUTH= before TLS)
    Profile("courier", "Courier-IMAP ready. Copyright 1998-2018 Double Precision, Inc.  "
            "See COPYING for distribution information.",
            "IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT "
            "THREAD=REFERENCES SORT QUOTA IDLE",
            select_uidnext=False, unstable_status_uidvalidity=True),
    # Cyrus IMAP 3.6.1 (Debian): folders under INBOX., special use written in lower case;
    # IDLE, SPECIAL-USE and the rest only after login
    Profile("cyrus", "localhost Cyrus IMAP 3.6.1-Debian-3.6.1-4 server ready",
            "IMAP4rev1 LITERAL+ ID ENABLE ACL RIGHTS=kxten QUOTA MAILBOX-REFERRALS "
            "NAMESPACE UIDPLUS NO_ATOMIC_RENAME UNSELECT CHILDREN MULTIAPPEND BINARY "
            "CATENATE CONDSTORE ESEARCH SORT THREAD=ORDEREDSUBJECT IDLE LIST-EXTENDED "
            "SPECIAL-USE AUTH=PLAIN SASL-IR",
            pre_login_capabilities="IMAP4rev1 LITERAL+ ID ENABLE AUTH=PLAIN SASL-IR"),
    Profile("163", "Coremail System IMap Server Ready", "IMAP4rev1 XLIST SPECIAL-USE ID "
            "LITERAL+ STARTTLS XAPPLEPUSHSERVICE UIDPLUS IDLE AUTH=PLAIN SASL-IR",
            require_id=True),
)}
