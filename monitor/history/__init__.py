"""The history: every result kept in a durable store, for the monthly report and a restart without gaps.

* ``store``: the store protocol (:class:`~monitor.history.store.HistoryStore`) and the records read back;
* ``writer``: the result-pipeline sink that writes them off the event loop, retries and prunes;
* ``set_aside``: rows no store can take (issue 24), told from store faults and kept in a file;
* ``restore``: what a restart reads back (last tests, the month's bytes, misses in a row);
* ``codec``: the one row layout and codec of both backends; ``sqlite`` and ``postgres``: the backends;
* ``store_url``: which backend ``--store URL`` names;
* ``exposition``: the store's health in ``/metrics``, a scrape-time renderer handed to the metrics sink.
"""
