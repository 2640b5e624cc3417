"""The human review loop: captured traffic → a review queue → Label Studio → labels → an incoming
batch the drift → retrain loop picks up.

- policy.py: which captured rows go to people, and why (pure: frames in, rows and counts out).
- queue.py: `mmguard review queue`: reads the capture log, applies the policy, writes a batch
  folder under data/review/queued/<batch>/.
- label_studio.py: the formats Label Studio reads and writes (tasks JSON, labelling config,
  the JSON export).
- importer.py: `mmguard review import`: a Label Studio export → validated labels → a batch in
  data/incoming/<batch>/ (jsonl layout) plus a quarantine with reasons.
- purge.py: `mmguard review purge`: retention by age and takedown by image hash.
"""
