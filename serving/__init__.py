"""Ray Serve deployments of Switchboard's models (intent recognition, speech, OCR) and their quantization.

Empty until the model-serving issue lands; the settings for a Ray cluster address will live next to this code.
"""
