"""The ledger of records: `records/<track>/<NNN>_<slug>/` entries, record add, same-hardware comparison and
replay, the external history tables, and plots drawn from evidence.
"""
