"""The writing stages (acquire, ingest, features, training, embed, index, evaluate) and rebuild, which runs them.

Each stage imports storage and below, never another stage; :mod:`.pipeline` is the protocol they share.
"""
