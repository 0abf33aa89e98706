"""Judges: (request, image, GT) in, a four-dimension rubric Score out. ``kind -> "module:Class"``."""

from genevolve.judge.base import Judge, JudgeError, Score, overall

JUDGES: dict[str, str] = {
    "heuristic": "genevolve.judge.heuristic:HeuristicJudge",
    "rubric": "genevolve.judge.rubric:RubricJudge",
    "sufficiency": "genevolve.judge.sufficiency:SufficiencyJudge",
    "world": "genevolve.world.judge:WorldJudge",
    "world-sufficiency": "genevolve.world.judge:WorldSufficiencyJudge",
}

__all__ = ["JUDGES", "Judge", "JudgeError", "Score", "overall"]
