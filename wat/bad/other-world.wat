;; bad/other-world.wat: a fixture that must be refused before it runs.
;;
;; A valid component (component-model text format) that exports a function
;; `hello` and does NOT export `wasi:cli/run`, so it is not a WASI command:
;; cairn must refuse it with a one-line error naming the file.
(component
  (core module $m
    (func (export "f") (result i32)
      i32.const 1))
  (core instance $i (instantiate $m))
  (func $f (result u32)
    (canon lift (core func $i "f")))
  (export "hello" (func $f)))
