;; bad/no-start.wat: a fixture that must be refused before it runs.
;;
;; A valid preview-1 core module that exports `memory` and a function `main`
;; but no `_start`: a reactor/library, not a command. cairn must refuse it
;; with a one-line error naming the file (no `_start` export).
(module
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param $code i32)))

  (memory (export "memory") 1)

  (func $main (export "main")))
