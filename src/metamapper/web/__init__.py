"""The local web demo: ``metamapper serve`` (a FastAPI app and a small static page).

Kept out of ``import metamapper``: the web libraries are the optional ``web`` extra
(``pip install 'metamapper-fewshot[web]'``) and load only when the server does.

Example::

    from metamapper.web.server import serve
    serve("runs/demo", host="127.0.0.1", port=7860)
"""
