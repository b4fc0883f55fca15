"""vml serve: a repository shared over HTTP by many users, each with a private namespace.

accounts.py holds users, groups and tokens (SQLite, argon2); access.py says what a caller
may do in a namespace; exchange.py is the server's side of push and fetch over the one
shared store, answering only from what the caller may read; app.py is the HTTP interface
(Starlette), web.py its pages; run.py starts it (uvicorn).
"""
