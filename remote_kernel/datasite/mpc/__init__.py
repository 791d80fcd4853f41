"""Joint computations with peer datasites by secure multi-party computation (MPyC).

``rk.secure.query(sql)`` asks every participating site the same pooled aggregate.
Each site verifies the request on its own (:mod:`.spec`: it is a party, the others
are peers its ``datasite.yaml`` names, the dataset opted in with ``mpc: true``, the
query has a shape the pooled tier answers soundly), computes its own vectors over
the public key domain (:mod:`.local`, :mod:`.plan`), and runs its MPyC party
(:mod:`.party`, over pinned mutual TLS: :mod:`.tls`). The parties check every
party's thresholds on the secret-shared pooled cells and open the pooled table
only if all pass. ``rk.secure.fit`` is the same with a model: :mod:`.fit` (the
site's sums or rows) and :mod:`.party_models` (least squares, logistic Newton steps,
solved on the shares by :mod:`.shares`). :mod:`.run` ties this together for the HTTP
handler and writes the audit entry; :mod:`.settings` reads the ``mpc:`` section;
:mod:`.certs` makes a site's key and self-signed certificate.

Nothing here imports MPyC except the party process itself (MPyC reads
``sys.argv`` when imported).
"""
