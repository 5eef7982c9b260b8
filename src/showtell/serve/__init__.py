"""The HTTP service and web page: the app's routes as small stages (app.py), the micro-batcher
(microbatch.py), request limits and slow-client timeouts (limits.py), binding and running uvicorn
(server.py), and the page (static/).

The service only calls the library: a Captioner, its checked decoding options, its stages. May
import the basics, data, decoding (the options) and inference; nothing of models (a Captioner
builds them), reporting, training, evaluation or cli.
"""
