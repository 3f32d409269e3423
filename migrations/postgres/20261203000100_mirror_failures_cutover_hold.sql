-- Whether the proxy that kept a copy holds requests to its key while the copy is kept, once
-- its target is the authoritative side (the cutover hold of a local journal; 1) or not (the
-- fleet's shared journal, statement copies, older rows; 0). A copy kept under the hold can be
-- replayed into its target after that side became authoritative: nothing newer of its key
-- can have reached that side meanwhile.
ALTER TABLE mirror_failures ADD COLUMN cutover_hold BIGINT NOT NULL DEFAULT 0;
