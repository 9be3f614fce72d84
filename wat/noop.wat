;; noop.wat: the guest that does nothing.
;;
;; What it does: _start returns at once. It reads nothing (not even its
;; dispatch), writes nothing and exits with code 0.
;;
;; What it is for: measuring cairn's fixed cost per dispatch (compile, link,
;; instantiate, tear down) with no guest work at all, and checking that a
;; guest with no output yields an empty reply rather than an error.
;;
;; It imports proc_exit without calling it, only so that it is a WASI
;; preview-1 command like every other guest.
(module
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param $code i32)))

  (memory (export "memory") 1)

  (func $main (export "_start"))
)
