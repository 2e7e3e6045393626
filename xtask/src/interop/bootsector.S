# The boot sector of the iPXE test. iPXE loads it from the AoE export (sanboot) and jumps to
# it at 0:7C00. It says so on COM1 (Debian's ipxe.lkrn itself prints only to VGA), reads
# sector 1 through the BIOS (int 13h, which iPXE serves over AoE), prints the string stored
# there, and halts.
	.code16
	.text
	.globl _start
_start:
	cli
	xorw %ax, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movw $0x7c00, %sp
	sti
	movb %dl, drive			# the BIOS passes the boot drive in DL
	movw $0x3fb, %dx		# COM1 line control: 8 data bits, no parity, 1 stop bit
	movb $0x03, %al
	outb %al, %dx
	movw $marker, %si
	call puts
	movw $0x0201, %ax		# int 13h AH=02: read AL=1 sector
	movw $0x0002, %cx		# cylinder 0, sector 2 (LBA 1)
	movb $0, %dh			# head 0
	movb drive, %dl
	movw $0x8000, %bx		# to 0000:8000
	int $0x13
	jc read_failed
	movw $sector1, %si
	call puts
	movw $0x8000, %si
	call puts
	movw $newline, %si
	call puts
	jmp halt
read_failed:
	movw $failed, %si
	call puts
halt:
	cli
	hlt
	jmp halt

# Print the NUL-terminated string at DS:SI on COM1.
puts:
	lodsb
	testb %al, %al
	jz 2f
	movb %al, %ah
	movw $0x3fd, %dx		# line status: wait for an empty transmit register (bit 5)
1:	inb %dx, %al
	testb $0x20, %al
	jz 1b
	movw $0x3f8, %dx
	movb %ah, %al
	outb %al, %dx
	jmp puts
2:	ret

drive:	.byte 0
marker:	.asciz "AOE-BOOT-MARKER booted from AoE\r\n"
sector1: .asciz "AOE-BOOT-SECTOR1 "
failed:	.asciz "AOE-BOOT-SECTOR1-FAILED\r\n"
newline: .asciz "\r\n"
	.org 510
	.byte 0x55, 0xaa
