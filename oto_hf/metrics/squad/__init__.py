# Makes the folder a package so that wheels ship `squad.py`; `evaluate.load` reads `squad.py` itself.
