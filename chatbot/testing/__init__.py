"""Test doubles and launchers shared by tests/, bench/ and the demo."""
