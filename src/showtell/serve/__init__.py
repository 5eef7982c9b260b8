"""The HTTP service and web page: the app's routes as small stages (app.py), the micro-batcher
(batching.py), request limits and slow-client timeouts (limits.py), binding and running uvicorn
(server.py), and the page (static/).

The service only calls the library: a Captioner, its checked decoding options, its stages. May
import the basics, data and inference; nothing of training, evaluation or cli.
"""
