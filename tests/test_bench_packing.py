"""bench_train's packed batch draws the documents the docmask anchor draws (seed 0)."""
import numpy as np

from benchmarks import bench_train


def test_packed_documents_match_the_anchors_draw():
  # Boundaries printed by shared/bench/torch_docmask_anchor.py's pack() for these arguments.
  for (B, T, mean_doc), want in (((2, 1024, 512), [[347, 869, 885, 901], [833]]),
                                 ((1, 256, 40), [[26, 66, 82, 98, 120, 185, 211, 241]])):
    seg, pos = bench_train.packed_documents(B, T, mean_doc)
    assert [np.flatnonzero(np.diff(row)).tolist() for row in seg] == want
    for b in range(B):  # positions restart at each document
      starts = np.r_[0, np.flatnonzero(np.diff(seg[b])) + 1]
      assert (pos[b, starts] == 0).all() and (np.diff(pos[b])[np.diff(seg[b]) == 0] == 1).all()
