"""Recognition: the typed Python API over a trained run."""

from skulens.recognition.recognizer import Prediction, Recognizer, ScoredClass

__all__ = ["Prediction", "Recognizer", "ScoredClass"]
