"""Models: the image encoders (encoder.py: torchvision backbones and a small CNN; hub_encoders.py:
timm models and open_clip image towers; weight_files.py: weights read from local files), the decoders
(nic.py: Show and Tell; attention.py: Show, Attend and Tell; transformer.py), pretrained word
vectors (embeddings.py) and the whole captioner built from the config (caption_model.py).

Every decoder offers decoding the same two calls, `init_state(features)` and
`step(words, state)`, and training one teacher-forced forward pass. Each decoder file ends in a
`build` function and each encoder family has a builder returning a `Backbone`; their rows in
architectures.py (DECODERS, ENCODER_FAMILIES) name them, so the captioner never branches on a kind. Models know tensors, not
files or run folders (a weights file named in the config is read by the encoder). May import the
basics and data (a picture transform comes with the encoder's weights); nothing above.
"""
