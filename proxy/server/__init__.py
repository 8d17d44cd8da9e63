"""The asyncio layer: listeners, sockets and the HTTP management port. It only moves bytes."""
