;; membomb.wat: a guest that takes all the memory it can.
;;
;; What it does: grows its linear memory by 16 pages (1 MiB) at a time,
;; forever. When memory.grow refuses (returns -1) it simply tries again: it
;; never exits by itself, so the only ways out are the memory cap (if the host
;; turns a refused grow into a trap) or the deadline.
;;
;; What it is for: checking the linear-memory cap ("memory cap of N MiB
;; exceeded") and that a guest hammering the cap cannot outlive its deadline.
;;
;; The memory has no declared maximum, so only the host limits it. It imports
;; proc_exit without calling it, only so that it is a WASI preview-1 command.
(module
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param $code i32)))

  (memory (export "memory") 1)

  (func $main (export "_start")
    (loop $forever
      ;; the new size in pages, or -1 when refused: either way, keep going
      (drop (memory.grow (i32.const 16)))
      (br $forever)))
)
