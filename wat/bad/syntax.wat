;; bad/syntax.wat: a fixture that must fail to compile (WAT syntax error, line 3).
(module
  (func $main (export "_start") i32.frobnicate)
  (memory (export "memory") 1))
;; Line 3 uses an instruction that does not exist (`i32.frobnicate`), so the
;; text-to-binary step fails; cairn must report the parse error with the
;; file name (and ideally the line) and run nothing.
