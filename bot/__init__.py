"""Image Chatbot: a self-hosted image-generation chat bot."""

__version__ = "0.1.0"
