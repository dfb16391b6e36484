"""A WSGI app that answers with the id of the process that served the
request (which gunicorn worker took the connection)."""

import os


def app(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
