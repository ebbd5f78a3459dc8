"""The advertisers' fix API (:mod:`.app`): token-authenticated, scoped to each advertiser's own
images, recording fixes through :mod:`tagging.fixes` like every other caller.
"""
