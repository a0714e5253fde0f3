"""Label your own data: sessions over unlabeled pools, exchange with labeling tools."""
