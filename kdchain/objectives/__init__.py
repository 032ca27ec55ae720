"""Search objectives, one module per `kind`: its spec (a kdchain.spec.objective.Objective decorated with
kdchain.spec.kinds.OBJECTIVES.register) and how it picks the winner (`select`)."""
