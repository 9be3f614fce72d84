;; spin.wat: a guest that computes forever.
;;
;; What it does: _start enters a tight `loop br 0` that makes no call, reads
;; and writes nothing, and never ends by itself.
;;
;; What it is for: checking that the wall-clock deadline interrupts a guest
;; wherever it is, even in a loop with no host call where nothing would
;; yield (`cairn run --timeout 2 wat/spin.wat` must fail with
;; "deadline of 2 s exceeded" after about two seconds).
;;
;; It imports proc_exit without calling it, only so that it is a WASI
;; preview-1 command like every other guest.
(module
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param $code i32)))

  (memory (export "memory") 1)

  (func $main (export "_start")
    (loop $forever
      (br $forever)))
)
