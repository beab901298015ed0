//! How much of PID 1's own binary stays mapped once the app runs.
//!
//! Owns: dropping PID 1's mappings of its own read-only segments (code, constants) once, when the app runs.
//! Does not own: when that is (the event loop decides), anything writable.
//!
//! Why: PID 1 lives as long as the container, but most of its code (options, the runtime check, the ELF
//! reader, help) runs only before the app starts. The kernel maps a file's pages in windows of 64 KiB (or a
//! whole page-cache folio) around every page a process touches (fault-around), so by the time the app runs
//! nearly the whole binary is mapped: counted in PID 1's RSS, and kept by reclaim as mapped executable pages.
//! MADV_DONTNEED drops the mappings, not the pages (they stay in the page cache, shared with every other
//! process running the binary); the steady-state loop then maps back only the windows it runs in. Only pages
//! that still equal the file qualify, since dropping a written private page would lose what was written:
//! segments without write permission, and none at all in an executable with text relocations (which the
//! loader writes into its code; Rust and musl never produce them). A debugger's breakpoint is such a written
//! page too: one set before the app starts is lost; set it after.

use std::ops::Range;

/// Drop the mappings of every read-only loadable segment of the running executable; returns the bytes
/// advised. A kernel that refuses (none does for these flags) leaves the pages mapped: harmless. Inlined
/// into the caller and allocation-free, so that what runs after the last madvise is the caller's own code
/// and no window of the binary is mapped back just to finish this function.
#[inline(always)]
pub fn release_read_only_segments() -> usize {
    let Some((headers, bias)) = executable() else {
        return 0;
    };
    // SAFETY: getauxval only reads the auxiliary vector.
    let page = unsafe { libc::getauxval(libc::AT_PAGESZ) } as usize;
    // SAFETY: the headers are the running executable's, and so is the bias.
    if !page.is_power_of_two() || unsafe { has_text_relocations(headers, bias) } {
        return 0;
    }
    let mut released = 0;
    for range in headers
        .iter()
        .filter_map(|h| read_only_pages(h, bias, page))
    {
        // SAFETY: the range is whole pages inside a non-writable segment of our own executable: dropping
        // them only makes the next access re-read the same bytes from the file.
        if unsafe { libc::madvise(range.start as *mut _, range.len(), libc::MADV_DONTNEED) } == 0 {
            released += range.len();
        }
    }
    released
}

/// The running executable's program headers and the address it was loaded at (0 unless it is
/// position-independent): the first object dl_iterate_phdr(3) reports, which libc computes from what the
/// kernel passed (a static-pie binary has no PT_PHDR to compute it from).
fn executable() -> Option<(&'static [libc::Elf64_Phdr], usize)> {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        _: usize,
        out: *mut libc::c_void,
    ) -> i32 {
        // SAFETY: libc passes a valid info for the call; `out` is the Option below.
        unsafe {
            let info = &*info;
            if !info.dlpi_phdr.is_null() {
                // The headers stay mapped (read-only) for the life of the process.
                let headers =
                    std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum));
                *out.cast::<Option<(&[libc::Elf64_Phdr], usize)>>() =
                    Some((headers, info.dlpi_addr as usize));
            }
        }
        1 // the executable comes first: stop there
    }
    let mut out: Option<(&'static [libc::Elf64_Phdr], usize)> = None;
    // SAFETY: the callback writes only `out`, of the type it casts to, during the call.
    unsafe { libc::dl_iterate_phdr(Some(first), (&raw mut out).cast()) };
    out
}

const DT_NULL: u64 = 0;
const DT_TEXTREL: u64 = 22;
const DT_FLAGS: u64 = 30;
const DF_TEXTREL: u64 = 4;

/// True when the dynamic section asks the loader to write into read-only segments (DT_TEXTREL, or DF_TEXTREL
/// in DT_FLAGS). A static executable has no dynamic section.
///
/// # Safety
/// `headers` must describe an image loaded at `bias` whose PT_DYNAMIC, if any, is mapped.
unsafe fn has_text_relocations(headers: &[libc::Elf64_Phdr], bias: usize) -> bool {
    let Some(d) = headers.iter().find(|h| h.p_type == libc::PT_DYNAMIC) else {
        return false;
    };
    let at = bias.wrapping_add(d.p_vaddr as usize) as *const [u64; 2];
    // SAFETY: the caller's promise; the dynamic section is an array of (tag, value) pairs of 8 bytes each,
    // 8-aligned, p_memsz long.
    let entries = unsafe { std::slice::from_raw_parts(at, d.p_memsz as usize / 16) };
    entries
        .iter()
        .take_while(|e| e[0] != DT_NULL)
        .any(|e| e[0] == DT_TEXTREL || (e[0] == DT_FLAGS && e[1] & DF_TEXTREL != 0))
}

/// The whole pages of a loadable segment without write permission, if any.
fn read_only_pages(h: &libc::Elf64_Phdr, bias: usize, page: usize) -> Option<Range<usize>> {
    if h.p_type != libc::PT_LOAD || h.p_flags & libc::PF_W != 0 {
        return None;
    }
    let start = bias.wrapping_add(h.p_vaddr as usize);
    // Inward: a partial page at either end may also hold a neighbouring (writable) segment's bytes.
    let first = start.checked_add(page - 1)? & !(page - 1);
    let end = start.checked_add(h.p_memsz as usize)? & !(page - 1);
    (end > first).then_some(first..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_only_segments(
        headers: &[libc::Elf64_Phdr],
        bias: usize,
        page: usize,
    ) -> Vec<Range<usize>> {
        headers
            .iter()
            .filter_map(|h| read_only_pages(h, bias, page))
            .collect()
    }

    fn header(p_type: u32, p_flags: u32, p_vaddr: u64, p_memsz: u64) -> libc::Elf64_Phdr {
        libc::Elf64_Phdr {
            p_type,
            p_flags,
            p_offset: 0,
            p_vaddr,
            p_paddr: p_vaddr,
            p_filesz: p_memsz,
            p_memsz,
            p_align: 0x1000,
        }
    }

    const R: u32 = libc::PF_R;
    const RX: u32 = libc::PF_R | libc::PF_X;
    const RW: u32 = libc::PF_R | libc::PF_W;

    #[test]
    fn only_whole_pages_of_segments_without_write_permission_are_released() {
        // The layout of a static musl build: header page, code, constants, then data sharing no page.
        let headers = [
            header(libc::PT_LOAD, R, 0x40_0000, 0x25c),
            header(libc::PT_LOAD, RX, 0x40_1000, 0x7_aa51),
            header(libc::PT_LOAD, R, 0x47_c000, 0x1_3e38),
            header(libc::PT_LOAD, RW, 0x49_0f38, 0x1248),
            header(libc::PT_GNU_STACK, RW, 0, 0),
        ];
        assert_eq!(
            read_only_segments(&headers, 0, 0x1000),
            vec![0x40_1000..0x47_b000, 0x47_c000..0x48_f000]
        );
    }

    #[test]
    fn a_position_independent_executable_is_released_at_its_load_address() {
        let headers = [header(libc::PT_LOAD, RX, 0x1000, 0x3000)];
        let bias = 0x5555_0000_0000;
        assert_eq!(
            read_only_segments(&headers, bias, 0x1000),
            vec![bias + 0x1000..bias + 0x4000]
        );
    }

    #[test]
    fn a_segment_that_shares_its_pages_with_writable_data_is_left_alone() {
        // Constants from 0x1800 to 0x2400: no page of them is whole.
        let headers = [header(libc::PT_LOAD, R, 0x1800, 0xc00)];
        assert_eq!(read_only_segments(&headers, 0, 0x1000), vec![]);
    }

    #[test]
    fn an_executable_with_text_relocations_is_left_alone() {
        let with = |tag: u64, value: u64| {
            let dynamic: Box<[[u64; 2]; 3]> = Box::new([[1, 0], [tag, value], [DT_NULL, 0]]);
            let at = dynamic.as_ptr() as u64;
            let headers = [header(libc::PT_DYNAMIC, RW, at, 48)];
            // SAFETY: the PT_DYNAMIC header points at `dynamic`, alive until the end of this closure.
            unsafe { has_text_relocations(&headers, 0) }
        };
        assert!(with(DT_TEXTREL, 0));
        assert!(with(DT_FLAGS, DF_TEXTREL | 8));
        assert!(!with(DT_FLAGS, 8));
        assert!(!with(5, 0));
        // SAFETY: no PT_DYNAMIC: nothing is read.
        assert!(!unsafe { has_text_relocations(&[header(libc::PT_LOAD, RX, 0x1000, 0x1000)], 0) });
    }

    #[test]
    fn this_test_binary_has_read_only_pages_to_release() {
        // This very process (a position-independent one): its code is a read-only segment.
        let (headers, bias) = executable().expect("libc reports the executable");
        let pages = read_only_segments(headers, bias, 4096);
        let here = this_test_binary_has_read_only_pages_to_release as *const () as usize;
        assert!(
            pages.iter().any(|r| r.contains(&here)),
            "{here:#x} not in {pages:x?}"
        );
    }
}
