"""Serving: what turns an adapter into something a serving stack loads."""
