"""The Factory agent on the broker's side: how its requests are authenticated, its keys, its sessions and orders."""
