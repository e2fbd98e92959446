"""SSH front end: asyncssh listener, username routing, upstream client, relay, SFTP bridge.

Translates SSH events into broker calls and broker answers into SSH replies. It never
decides access itself.
"""
