"""inventory.yaml: the hosts and settings of the deploy tasks, in one place.

    inv = load_inventory()                 # $FACENET_INVENTORY, else <repo>/inventory.yaml
    inv.hosts["gpu"].address               # "203.0.113.10"
    inv.remote["runs_dir"]                 # "~/facenet-runs"
    inv.local_data                         # [Path("/home/me/data/crema-d")]

A file only needs what differs from the defaults. Unknown keys and values of the wrong type are an
`InventoryError` naming the key. Local paths are relative to the inventory file; remote paths starting
with `~/` are relative to the remote user's home.

    schema.py   the keys, their defaults and types (docs/inventory.md documents each); Inventory, Host, Cluster
    checks.py   a file checked against them, and each setting beyond its type
    hosts.py    the hosts: and clusters: entries as Host and Cluster
    load.py     load_inventory: read, merge over the defaults, check, add the hosts `fab launch` made
"""

from deploy.inventory.load import inventory_path, load_inventory
from deploy.inventory.schema import Cluster, Host, Inventory

__all__ = ["Cluster", "Host", "Inventory", "inventory_path", "load_inventory"]
