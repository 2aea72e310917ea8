"""Keypoint extractors behind one interface (SIFT, ORB, SuperPoint), descriptor matching, masks and
photometric normalisation."""
