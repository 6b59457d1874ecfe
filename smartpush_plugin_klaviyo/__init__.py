"""The Klaviyo integration plugin for SmartPush."""

__version__ = "0.1.0"
