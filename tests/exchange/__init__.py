"""vml/exchange and vml/transport: the transport contract and the order blobs travel in."""
