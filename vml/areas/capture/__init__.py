"""Capturing a working area's files into the chunk store: a local tree (local.py) or a
guest's, from a listing and a tar stream (guest.py), into the same Merkle tree of listings."""

from vml.areas.capture.assemble import CaptureProgress, CaptureResult
from vml.areas.capture.guest import FIND_FORMAT, GuestCapture, GuestListing, ListingParser, parse_listing, parse_names
from vml.areas.capture.local import Capture, capture_files, capture_tree
from vml.areas.tarformat import parse_time

__all__ = [
    "FIND_FORMAT", "Capture", "CaptureProgress", "CaptureResult", "GuestCapture", "GuestListing", "ListingParser",
    "capture_files", "capture_tree", "parse_listing", "parse_names", "parse_time",
]
