"""rwkvprobe: is each RWKV layer compute-, bandwidth- or overhead-bound on this machine?"""

__version__ = "0.1.0"
