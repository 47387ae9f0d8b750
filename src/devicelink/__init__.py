"""devicelink: the OAuth 2.0 Device Authorization Grant (RFC 8628) for devices with a small screen."""

__version__ = "0.1.0"
