# Makes the folder a package so that wheels ship `squad_v2.py`; `evaluate.load` reads `squad_v2.py` itself.
