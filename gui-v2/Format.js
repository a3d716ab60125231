// Text for the aggbatt pages. A value that is missing (invalid on the bus) shows as "--".
.pragma library

function valid(value) {
	return value !== undefined && value !== null && !(typeof value === "number" && isNaN(value))
}

function number(value, decimals, unit) {
	return valid(value) ? Number(value).toFixed(decimals) + (unit ? " " + unit : "") : "--"
}

function text(value) {
	return valid(value) && String(value) !== "" ? String(value) : "--"
}

function yesNo(value) {
	return valid(value) ? (value ? "yes" : "no") : "--"
}

function age(seconds) {
	if (!valid(seconds)) {
		return "--"
	}
	if (seconds < 120) {
		return seconds + " s"
	}
	if (seconds < 7200) {
		return Math.round(seconds / 60) + " min"
	}
	return (seconds / 3600).toFixed(1) + " h"
}

// One pack row: its state, then V, A and SoC.
function packSummary(state, voltage, current, soc) {
	return [text(state), number(voltage, 2, "V"), number(current, 1, "A"), number(soc, 0, "%")].join("  ")
}

// Under a pack row: why it is not online and what its last fresh data still imposes on the bank,
// else its limits and what it blocks.
function packCaption(reason, dataAge, holds, cvl, ccl, dcl, blocking) {
	if (valid(reason) && reason !== "") {
		var why = reason + " (data " + age(dataAge) + " old)"
		return valid(holds) && holds !== "" ? why + "; still counts: " + holds : why
	}
	var limits = "CVL " + number(cvl, 2, "V") + "  CCL " + number(ccl, 1, "A") + "  DCL " + number(dcl, 1, "A")
	return valid(blocking) && blocking !== "" ? limits + "  blocks " + blocking : limits
}
