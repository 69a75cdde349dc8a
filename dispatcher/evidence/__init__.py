"""Evidence: residents' clips, their shares with a request's agency (the chain of custody), public posts."""

from dispatcher.evidence.model import Clip, Post, Share, SharedClip
from dispatcher.evidence.places import COARSEST_POST_RES, POST_RES, jurisdiction_ranges, post_cell
from dispatcher.evidence.redis import RedisEvidence
from dispatcher.evidence.sqlite import SqliteEvidence
from dispatcher.evidence.store import CameraDirectory, EvidenceRules, EvidenceStore

__all__ = ["COARSEST_POST_RES", "POST_RES", "CameraDirectory", "Clip", "EvidenceRules", "EvidenceStore", "Post",
           "RedisEvidence", "Share", "SharedClip", "SqliteEvidence", "jurisdiction_ranges", "post_cell"]
