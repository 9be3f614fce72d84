;; escape.wat: a confinement probe.
;;
;; What it does: tries five ways out of the workspace, each a path_open
;; against fd 3 (the /workspace preopen, checked with fd_prestat_get first):
;;
;;   key                 path                            open for          lookup
;;   etc_passwd          /etc/passwd                     read              follow
;;   dotdot_outside      ../outside.txt                  write + O_TRUNC   follow
;;   dotdot_etc_passwd   ../../../../../../etc/passwd    read              follow
;;   link_dir            link-out/target.txt             write + O_TRUNC   follow
;;   link_file           link-file                       write + O_TRUNC   follow
;;
;; `link-out` (a symlink to a directory outside the workspace) and `link-file`
;; (a symlink to a file outside it) are made by the test before the run; when
;; they are missing those probes simply report ENOENT (44).
;;
;; For each refused open it writes a progress event
;;     {"type":"progress","message":"etc_passwd: errno 76"}
;; and at the end the final event
;;     {"type":"final","text":"escape: all refused","data":{"etc_passwd":76,...}}
;; then returns (exit 0).
;;
;; If ANY open succeeds, it writes "ESCAPED" to the file it got (so the damage
;; is visible on the host), reports it on stdout and stderr, and exits with
;; proc_exit(1). If fd 3 is not a preopened directory: stderr, proc_exit(2).
;;
;; What it is for: checking that the workspace preopen confines the guest:
;; no absolute paths, no `..` above the root, no symlink followed out.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param $fd i32) (param $iovs i32) (param $iovs_len i32) (param $nwritten i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get"
    (func $fd_prestat_get (param $fd i32) (param $buf i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param $dirfd i32) (param $lookupflags i32) (param $path i32) (param $path_len i32)
                     (param $oflags i32) (param $rights_base i64) (param $rights_inheriting i64)
                     (param $fdflags i32) (param $fd_out i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param $code i32)))

  (memory (export "memory") 1)

  ;; ---- memory layout ---------------------------------------------------
  (global $IOV i32 (i32.const 0))      ;; one iovec {buf, len}
  (global $NUM i32 (i32.const 8))      ;; nwritten out-parameter
  (global $FD_OUT i32 (i32.const 12))  ;; path_open's fd out-parameter
  (global $PRESTAT i32 (i32.const 16)) ;; fd_prestat_get's result (8 bytes)
  (global $LINE i32 (i32.const 2048))  ;; one progress line being assembled
  (global $FINAL i32 (i32.const 4096)) ;; the final line being assembled

  ;; ---- WASI constants --------------------------------------------------
  (global $WORKSPACE_FD i32 (i32.const 3))
  (global $LOOKUP_FOLLOW i32 (i32.const 1))  ;; lookupflags.symlink_follow
  (global $O_TRUNC i32 (i32.const 8))        ;; oflags.trunc
  (global $RIGHT_READ i64 (i64.const 2))     ;; rights.fd_read
  (global $RIGHT_WRITE i64 (i64.const 64))   ;; rights.fd_write

  ;; the final line is built here while the probes run
  (global $final_end (mut i32) (i32.const 0))
  (global $probes_done (mut i32) (i32.const 0))

  ;; ---- constant strings (address, length) ------------------------------
  ;; probe keys and paths
  (global $S_K_ETC i32 (i32.const 64))
  (global $S_K_ETC_LEN i32 (i32.const 10))
  (data (i32.const 64) "etc_passwd")
  (global $S_P_ETC i32 (i32.const 80))
  (global $S_P_ETC_LEN i32 (i32.const 11))
  (data (i32.const 80) "/etc/passwd")
  (global $S_K_DOTDOT i32 (i32.const 96))
  (global $S_K_DOTDOT_LEN i32 (i32.const 14))
  (data (i32.const 96) "dotdot_outside")
  (global $S_P_DOTDOT i32 (i32.const 112))
  (global $S_P_DOTDOT_LEN i32 (i32.const 14))
  (data (i32.const 112) "../outside.txt")
  (global $S_K_DEEP i32 (i32.const 128))
  (global $S_K_DEEP_LEN i32 (i32.const 17))
  (data (i32.const 128) "dotdot_etc_passwd")
  (global $S_P_DEEP i32 (i32.const 160))
  (global $S_P_DEEP_LEN i32 (i32.const 28))
  (data (i32.const 160) "../../../../../../etc/passwd")
  (global $S_K_LINKDIR i32 (i32.const 192))
  (global $S_K_LINKDIR_LEN i32 (i32.const 8))
  (data (i32.const 192) "link_dir")
  (global $S_P_LINKDIR i32 (i32.const 208))
  (global $S_P_LINKDIR_LEN i32 (i32.const 19))
  (data (i32.const 208) "link-out/target.txt")
  (global $S_K_LINKFILE i32 (i32.const 232))
  (global $S_K_LINKFILE_LEN i32 (i32.const 9))
  (data (i32.const 232) "link_file")
  (global $S_P_LINKFILE i32 (i32.const 248))
  (global $S_P_LINKFILE_LEN i32 (i32.const 9))
  (data (i32.const 248) "link-file")
  ;; pieces of the output lines
  (global $S_PROGRESS_HEAD i32 (i32.const 272))
  (global $S_PROGRESS_HEAD_LEN i32 (i32.const 30))
  (data (i32.const 272) "{\"type\":\"progress\",\"message\":\"")
  (global $S_ERRNO i32 (i32.const 304))
  (global $S_ERRNO_LEN i32 (i32.const 8))
  (data (i32.const 304) ": errno ")
  (global $S_LINE_TAIL i32 (i32.const 320))
  (global $S_LINE_TAIL_LEN i32 (i32.const 3))
  (data (i32.const 320) "\"}\n")
  (global $S_FINAL_HEAD i32 (i32.const 336))
  (global $S_FINAL_HEAD_LEN i32 (i32.const 53))
  (data (i32.const 336) "{\"type\":\"final\",\"text\":\"escape: all refused\",\"data\":{")
  (global $S_FINAL_TAIL i32 (i32.const 400))
  (global $S_FINAL_TAIL_LEN i32 (i32.const 3))
  (data (i32.const 400) "}}\n")
  (global $S_ESCAPED i32 (i32.const 416))
  (global $S_ESCAPED_LEN i32 (i32.const 8))
  (data (i32.const 416) "ESCAPED\n")
  (global $S_OPENED i32 (i32.const 432))
  (global $S_OPENED_LEN i32 (i32.const 28))
  (data (i32.const 432) ": OPENED, confinement broken")
  (global $S_ERR_PREOPEN i32 (i32.const 464))
  (global $S_ERR_PREOPEN_LEN i32 (i32.const 49))
  (data (i32.const 464) "escape: fd 3 is not a preopened directory (errno ")
  (global $S_CLOSE_PAREN i32 (i32.const 520))
  (global $S_CLOSE_PAREN_LEN i32 (i32.const 2))
  (data (i32.const 520) ")\n")
  (global $S_STDERR_HEAD i32 (i32.const 528))
  (global $S_STDERR_HEAD_LEN i32 (i32.const 8))
  (data (i32.const 528) "escape: ")
  (global $S_NL i32 (i32.const 544))
  (global $S_NL_LEN i32 (i32.const 1))
  (data (i32.const 544) "\n")

  ;; Write all `len` bytes at `ptr` to `fd`; returns 0 or the WASI errno
  ;; (29, EIO, when the host accepts nothing).
  (func $write_all (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (local $err i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (global.get $IOV) (local.get $ptr))
        (i32.store offset=4 (global.get $IOV) (local.get $len))
        (local.set $err
          (call $fd_write (local.get $fd) (global.get $IOV) (i32.const 1) (global.get $NUM)))
        (if (local.get $err) (then (return (local.get $err))))
        (if (i32.eqz (i32.load (global.get $NUM))) (then (return (i32.const 29))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.load (global.get $NUM))))
        (local.set $len (i32.sub (local.get $len) (i32.load (global.get $NUM))))
        (br $more)))
    (i32.const 0))

  ;; Copy len bytes from src to dst; returns dst + len.
  (func $put (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $len))
    (i32.add (local.get $dst) (local.get $len)))

  ;; Write the decimal digits of unsigned n at dst; returns the address after them.
  (func $put_uint (param $dst i32) (param $n i32) (result i32)
    (local $digits i32) (local $rest i32) (local $at i32)
    ;; count the digits
    (local.set $digits (i32.const 1))
    (local.set $rest (local.get $n))
    (block $counted
      (loop $count
        (br_if $counted (i32.lt_u (local.get $rest) (i32.const 10)))
        (local.set $rest (i32.div_u (local.get $rest) (i32.const 10)))
        (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
        (br $count)))
    ;; fill them in from the last one
    (local.set $at (i32.add (local.get $dst) (local.get $digits)))
    (local.set $rest (local.get $n))
    (loop $digit
      (local.set $at (i32.sub (local.get $at) (i32.const 1)))
      (i32.store8 (local.get $at) (i32.add (i32.const 48) (i32.rem_u (local.get $rest) (i32.const 10))))
      (local.set $rest (i32.div_u (local.get $rest) (i32.const 10)))
      (br_if $digit (local.get $rest)))
    (i32.add (local.get $dst) (local.get $digits)))

  ;; Write {"type":"progress","message":"KEY<what>"} + "\n" to stdout, where
  ;; <what> is `: errno N` (errno > 0) or `: OPENED, ...` (errno = 0).
  (func $report (param $key i32) (param $key_len i32) (param $errno i32)
    (local $p i32)
    (local.set $p (call $put (global.get $LINE) (global.get $S_PROGRESS_HEAD) (global.get $S_PROGRESS_HEAD_LEN)))
    (local.set $p (call $put (local.get $p) (local.get $key) (local.get $key_len)))
    (if (local.get $errno)
      (then
        (local.set $p (call $put (local.get $p) (global.get $S_ERRNO) (global.get $S_ERRNO_LEN)))
        (local.set $p (call $put_uint (local.get $p) (local.get $errno))))
      (else
        (local.set $p (call $put (local.get $p) (global.get $S_OPENED) (global.get $S_OPENED_LEN)))))
    (local.set $p (call $put (local.get $p) (global.get $S_LINE_TAIL) (global.get $S_LINE_TAIL_LEN)))
    (drop (call $write_all (i32.const 1) (global.get $LINE) (i32.sub (local.get $p) (global.get $LINE)))))

  ;; One probe: path_open(fd 3, follow symlinks, path, oflags, rights).
  ;; Refused: report the errno and add "KEY":ERRNO to the final line's data.
  ;; Opened: write ESCAPED into it, say so on stdout and stderr, proc_exit(1).
  (func $probe (param $key i32) (param $key_len i32) (param $path i32) (param $path_len i32)
                (param $oflags i32) (param $rights i64)
    (local $errno i32) (local $fd i32) (local $p i32)
    (local.set $errno
      (call $path_open (global.get $WORKSPACE_FD) (global.get $LOOKUP_FOLLOW)
                       (local.get $path) (local.get $path_len)
                       (local.get $oflags) (local.get $rights) (i64.const 0)
                       (i32.const 0) (global.get $FD_OUT)))
    (if (i32.eqz (local.get $errno))
      (then
        ;; it got out: make the damage visible and fail loudly
        (local.set $fd (i32.load (global.get $FD_OUT)))
        (drop (call $write_all (local.get $fd) (global.get $S_ESCAPED) (global.get $S_ESCAPED_LEN)))
        (call $report (local.get $key) (local.get $key_len) (i32.const 0))
        (local.set $p (call $put (global.get $LINE) (global.get $S_STDERR_HEAD) (global.get $S_STDERR_HEAD_LEN)))
        (local.set $p (call $put (local.get $p) (local.get $path) (local.get $path_len)))
        (local.set $p (call $put (local.get $p) (global.get $S_OPENED) (global.get $S_OPENED_LEN)))
        (local.set $p (call $put (local.get $p) (global.get $S_NL) (global.get $S_NL_LEN)))
        (drop (call $write_all (i32.const 2) (global.get $LINE) (i32.sub (local.get $p) (global.get $LINE))))
        (call $proc_exit (i32.const 1))))
    (call $report (local.get $key) (local.get $key_len) (local.get $errno))
    ;; ,"KEY":ERRNO  (no comma before the first)
    (local.set $p (global.get $final_end))
    (if (global.get $probes_done)
      (then
        (i32.store8 (local.get $p) (i32.const 44)) ;; ','
        (local.set $p (i32.add (local.get $p) (i32.const 1)))))
    (i32.store8 (local.get $p) (i32.const 34)) ;; '"'
    (local.set $p (call $put (i32.add (local.get $p) (i32.const 1)) (local.get $key) (local.get $key_len)))
    (i32.store16 (local.get $p) (i32.const 0x3a22)) ;; '"' ':' (little-endian)
    (local.set $p (call $put_uint (i32.add (local.get $p) (i32.const 2)) (local.get $errno)))
    (global.set $final_end (local.get $p))
    (global.set $probes_done (i32.add (global.get $probes_done) (i32.const 1))))

  (func $main (export "_start")
    (local $errno i32) (local $p i32)

    ;; fd 3 must be the preopened workspace directory (prestat tag 0 = dir),
    ;; or every probe would be refused for the wrong reason (EBADF)
    (local.set $errno (call $fd_prestat_get (global.get $WORKSPACE_FD) (global.get $PRESTAT)))
    (if (i32.or (local.get $errno) (i32.load8_u (global.get $PRESTAT)))
      (then
        (local.set $p (call $put (global.get $LINE) (global.get $S_ERR_PREOPEN) (global.get $S_ERR_PREOPEN_LEN)))
        (local.set $p (call $put_uint (local.get $p) (local.get $errno)))
        (local.set $p (call $put (local.get $p) (global.get $S_CLOSE_PAREN) (global.get $S_CLOSE_PAREN_LEN)))
        (drop (call $write_all (i32.const 2) (global.get $LINE) (i32.sub (local.get $p) (global.get $LINE))))
        (call $proc_exit (i32.const 2))))

    (global.set $final_end
      (call $put (global.get $FINAL) (global.get $S_FINAL_HEAD) (global.get $S_FINAL_HEAD_LEN)))

    ;; (a) an absolute host path, for reading
    (call $probe (global.get $S_K_ETC) (global.get $S_K_ETC_LEN)
                 (global.get $S_P_ETC) (global.get $S_P_ETC_LEN)
                 (i32.const 0) (global.get $RIGHT_READ))
    ;; (b) one step above the workspace, for writing with truncation
    (call $probe (global.get $S_K_DOTDOT) (global.get $S_K_DOTDOT_LEN)
                 (global.get $S_P_DOTDOT) (global.get $S_P_DOTDOT_LEN)
                 (global.get $O_TRUNC) (global.get $RIGHT_WRITE))
    ;; (c) far above the workspace, for reading
    (call $probe (global.get $S_K_DEEP) (global.get $S_K_DEEP_LEN)
                 (global.get $S_P_DEEP) (global.get $S_P_DEEP_LEN)
                 (i32.const 0) (global.get $RIGHT_READ))
    ;; (d) through a symlinked directory pointing outside, write + trunc
    (call $probe (global.get $S_K_LINKDIR) (global.get $S_K_LINKDIR_LEN)
                 (global.get $S_P_LINKDIR) (global.get $S_P_LINKDIR_LEN)
                 (global.get $O_TRUNC) (global.get $RIGHT_WRITE))
    ;; (e) a symlink to a file outside, write + trunc
    (call $probe (global.get $S_K_LINKFILE) (global.get $S_K_LINKFILE_LEN)
                 (global.get $S_P_LINKFILE) (global.get $S_P_LINKFILE_LEN)
                 (global.get $O_TRUNC) (global.get $RIGHT_WRITE))

    (global.set $final_end
      (call $put (global.get $final_end) (global.get $S_FINAL_TAIL) (global.get $S_FINAL_TAIL_LEN)))
    (if (call $write_all (i32.const 1) (global.get $FINAL) (i32.sub (global.get $final_end) (global.get $FINAL)))
      (then (call $proc_exit (i32.const 1)))))
)
