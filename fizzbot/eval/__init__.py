"""Evaluation: the measures that say whether a model learned its channel (`measures`, pure, used by
training too) and `fizzbot eval` (`run`, `report`), which writes eval/report.html and eval.json."""
