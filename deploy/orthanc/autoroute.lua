-- Orthanc: send every chest radiograph it stores to the cxr PACS bridge.
-- Load it with  "LuaScripts": [ "/etc/orthanc/autoroute.lua" ]  and declare the bridge in
-- "DicomModalities": { "cxr": [ "CXR", "cxr-host", 11112 ] } (client/README.md, "Connect your PACS").
-- The bridge's own results (SR, PR) come back to Orthanc and are not routed again.
local BRIDGE = "cxr"  -- the DicomModalities entry

function OnStoredInstance(instanceId, tags, metadata, origin)
   if origin["RequestOrigin"] == "Lua" then
      return
   end
   local modality = tags["Modality"]
   if modality == "CR" or modality == "DX" then
      -- Sent as stored: the bridge accepts every transfer syntax it can decode.
      SendToModality(instanceId, BRIDGE)
   end
end
