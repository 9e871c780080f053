"""The ICMP engine: shared sockets, paced sends, replies matched by sequence, kernel timestamps, batched error-
queue reads.
"""
