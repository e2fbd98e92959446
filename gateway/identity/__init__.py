"""Identity: accounts, passwords, TOTP, enrolment links, lockout, portal sessions, tokens.

Answers "who is this?" for every front end and yields an ``Identity``; it never decides
what that person may reach (that is ``rbac`` through the broker).
"""
