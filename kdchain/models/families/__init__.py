"""Model families, one module per `kind`: its architecture spec (decorated with
kdchain.spec.kinds.FAMILIES.register) and its implementation as the spec's methods: `build` the module,
`describe` it in a line, its `default_tap` (the feature map a feature loss reads by default), `derive` a smaller
member, `prepare` (load pretrained weights before training), `missing_weights`. A new family is a new module here
and its test.
"""
