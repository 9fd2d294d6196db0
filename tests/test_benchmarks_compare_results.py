"""benchmarks/compare_results.py: the field-by-field comparison of two results.json files."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import compare_results  # noqa: E402


def test_equal_within_tolerance_and_each_kind_of_difference(tmp_path):
  ref = {"job": "train", "snapshots": {"5": {"gap": [1.0, 2.0, None], "images_seen": 64}},
         "samples": {"feature": {"path": "/a/classifier.npz", "kind": "classifier"}}}
  same = {"job": "evaluate", "snapshots": {"5": {"gap": [1.0 + 5e-6, 2.0, None], "images_seen": 64}},
          "samples": {"feature": {"path": "/b/classifier.npz", "kind": "classifier"}}}
  res = compare_results.compare(ref, same, rtol=1e-5)
  assert res["numbers"] == 3 and not res["mismatches"] and not res["missing"]
  assert abs(res["max_rel"][0] - 5e-6) < 1e-12 and res["max_rel"][1] == ".snapshots.5.gap[0]"
  bad = json.loads(json.dumps(same))
  bad["snapshots"]["5"]["gap"][1] = 2.0 * (1 + 2e-5)  # beyond rtol
  bad["snapshots"]["5"]["gap"][2] = 0.0  # null vs a number
  bad["samples"]["feature"]["kind"] = "pixels"
  bad["extra"] = 1
  res = compare_results.compare(ref, bad, rtol=1e-5)
  assert [m[0] for m in res["mismatches"]] == [".samples.feature.kind", ".snapshots.5.gap[1]",
                                               ".snapshots.5.gap[2]"]
  assert res["missing"] == [".extra (only in candidate)"]
  a, b = tmp_path / "a.json", tmp_path / "b.json"
  a.write_text(json.dumps(ref))
  b.write_text(json.dumps(same))
  assert compare_results.main([str(a), str(b)]) == 0
  b.write_text(json.dumps(bad))
  assert compare_results.main([str(a), str(b), "--allow-missing"]) == 1
