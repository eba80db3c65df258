"""The appliance: capture, inference, events, storage, publishing.

Imports only numpy, onnxruntime/tensorrt, opencv/pillow, paho-mqtt, sqlite-utils and pydantic;
never torch (it runs on a Raspberry Pi with a 150 MB memory budget).
"""
